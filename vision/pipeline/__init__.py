"""The build and compare pipelines: compositions of the stages below (data, calibration, artifacts, backends,
evaluation)."""
