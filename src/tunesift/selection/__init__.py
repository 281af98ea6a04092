"""Subset selection: submodular maximisation (:mod:`.submodular`) and ranking helpers."""
