"""Rate limits: token buckets for requests and tokens per minute, counters for concurrency.

Every limit is a token bucket that holds up to a minute's allowance and refills continuously
(``rpm / 60`` per second), so a client may burst a whole minute's worth and then proceeds at the
steady rate; there is no window edge where twice the limit gets through. A request is checked
against every scope that applies to it (its key, its agent, its model) and is admitted only if
all of them have room; otherwise nothing is taken from any of them, so a request denied by its
model's limit does not eat its key's budget.

Tokens are not known before the call, so an estimate is taken up front and the difference is
settled when the request ends (``Admission.release``): an overestimate is refunded, an
underestimate is charged, and a bucket may go into debt (down to minus one minute's allowance)
that later requests wait out. An estimate above a whole minute's allowance is admitted when the
bucket is full rather than refused forever: estimates are guesses (``max_tokens`` is an upper
bound), and the debt still holds the caller to the limit over time.

The modules, each importing only those above it:
  ``policy``     pure: which scopes apply to a request, and the bucket arithmetic over immutable
                 ``ScopeState`` values (``check``, ``settle``).
  ``admission``  one request's answer (``Admission``: headers, 429 text, release) and the
                 ``Backend`` protocol it settles through.
  ``memory``     ``MemoryBackend``: the policy applied to a dict of this process.
  ``redis``      ``RedisBackend``: the same rules in Lua, shared by every replica.
  ``limiter``    ``Limiter``, what the request path talks to.
"""
