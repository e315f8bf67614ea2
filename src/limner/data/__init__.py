"""limner.data"""
