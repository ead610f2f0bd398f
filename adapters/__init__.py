"""Adapter plugins: shared REST and SOAP plumbing plus one package per provincial system.

Each adapter implements ``gateway.adapter.AdapterFactory`` and is found by entry-point name
(group ``tongban.adapters``); nothing here is imported by the gateway itself.
"""
