"""tcllava.attention"""
