"""Consent grants (授权用证) and delegations (委托用证): what opens someone else's data."""
