"""tcllava.serve"""
