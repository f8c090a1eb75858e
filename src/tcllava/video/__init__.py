"""tcllava.video"""
