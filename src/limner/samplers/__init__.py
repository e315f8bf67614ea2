"""limner.samplers"""
