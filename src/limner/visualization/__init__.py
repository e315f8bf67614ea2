"""limner.visualization"""
