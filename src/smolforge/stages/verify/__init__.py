"""Verifiable data: IFEval constraints, JSON schemas, code run against its tests in the sandbox."""
