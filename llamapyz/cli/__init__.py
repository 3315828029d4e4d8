"""The `llamapyz` command line (`main`) and its serving side, shared with an archive's command (`serving`).
"""
