"""The approvals console: server-rendered pages beside the control API.

Same listener and the same rule as the API: the caller is the identity its tunnel says
(policyd/api/context.py). Pages show each identity only what its roles allow: a
requester its own grants and flows; an approver the requests it may decide; operators
everything. Actions are HTML form posts protected three ways: the API's guard refuses
cross-site requests (Origin, Sec-Fetch-Site), every form carries a token bound to the
caller's identity (HMAC with a per-daemon secret), and a strict Content-Security-Policy
allows only this server's own script and styles. No CDN, no cookies, no secrets in URLs.
"""
