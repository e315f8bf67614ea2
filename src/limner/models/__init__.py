"""limner.models"""
