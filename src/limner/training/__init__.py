"""limner.training"""
