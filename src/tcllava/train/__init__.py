"""tcllava.train"""
