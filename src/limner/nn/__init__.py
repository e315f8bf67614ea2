"""limner.nn"""
