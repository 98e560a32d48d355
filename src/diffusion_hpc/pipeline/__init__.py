"""The generation pipeline: orchestration only, every stage behind its interface."""
