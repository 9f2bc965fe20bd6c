"""Letrade_v1's bus (seed 003) on tradebus's machinery: its envelope and payloads, a client with
publish, subscribe and request/response, its health check and its demo. The topology is routing/letrade.py;
its stages are tasks/letrade/."""
