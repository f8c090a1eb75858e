"""tcllava.data"""
