"""The ground floor: the one typed config, typed errors, and the media contracts every stage passes along.

Imports nothing from the rest of ``pipeline`` (and nothing heavier than numpy and torch), so
that every stage may import it.
"""
