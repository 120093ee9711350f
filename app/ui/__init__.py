"""Shared pieces of the dashboard: process-wide state and chart builders (no science)."""
