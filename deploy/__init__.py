"""Deployment: policy server (websocket + msgpack), robot-side chunk executor with safety limits, bundles.

The robot side (`deploy.client`, `deploy.executor`, `deploy.wire`) needs only numpy, msgpack and websockets.
"""
