"""preferences"""
