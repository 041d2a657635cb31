"""Trainers turn (global vector, local data) into (local vector, examples, metrics)."""

from consortia.client.trainers.base import Trainer

__all__ = ["Trainer"]
