"""The machine llamapyz runs on: its CPU's features and kernel tiers (`cpu`), threads (`threads`).
"""
