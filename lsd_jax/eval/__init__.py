"""Evaluation: fidelity, flicker, particle statistics, prompt response and drift."""
