"""Tactics: the candidate implementations of each op, chosen per node at build time."""
from kiln.tactics.registry import Tactic, TacticQuery, candidates, get_tactic

__all__ = ["Tactic", "TacticQuery", "candidates", "get_tactic"]
