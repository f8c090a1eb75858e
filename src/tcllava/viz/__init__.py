"""tcllava.viz"""
