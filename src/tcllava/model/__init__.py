"""tcllava.model"""
