"""Scenario presets and Optuna define-by-run search spaces (optuna + trainables.config only)."""

from __future__ import annotations
