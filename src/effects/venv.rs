//! Python environments: venv build, package install, cache (being written).
