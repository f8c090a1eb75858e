"""tcllava.eval"""
