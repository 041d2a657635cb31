"""Test-wide settings."""

from hypothesis import settings

# CI runs on two shared vCPUs: a per-example time limit would make property tests fail on
# a busy machine for reasons that have nothing to do with the property.
settings.register_profile("consortia", deadline=None)
settings.load_profile("consortia")
