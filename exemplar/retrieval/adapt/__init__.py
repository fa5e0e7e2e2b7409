"""Adapters: storage and application, the training service (through a port), evaluation."""
