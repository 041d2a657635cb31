"""Core types shared by every part of consortia: model specs, flat vectors, errors, config."""
