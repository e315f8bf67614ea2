"""limner.conditioning"""
