"""An archive at run time, standard library only: its start-up, `--version` and `--verify` (`launcher`, its
`__main__.py`) and which of its targets fits this interpreter (`targets`).
"""
