"""Turning logits into text: samplers (`sampling`), generation as a generator (`generation`), output constraints
(`constraint`) and what a grammar may cost (`grammar_limits`).
"""
