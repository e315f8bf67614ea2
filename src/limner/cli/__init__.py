"""limner.cli"""
