"""The rate-limit arithmetic of actors.limiter.local, in Redis: one Lua script per admission and
one per settlement, each atomic, each reading the clock from Redis (`TIME`), so that every
worker process and every gateway machine sharing the Redis shares one exact limit.

Per subject, four keys: `<prefix><subject>:tat` (GCRA), `:tokens` (a hash: level, stamp),
`:flight` (a sorted set of request ids scored by when their slot expires, so that a slot
held by a process that died is freed after `lease_ttl` rather than leaked), and
`:budget:<period>` (the budget's spend in that period, kept a day past its end). A period's
first admission, or one after Redis lost its state, is told to bring the spend so far
(`seed`, from the usage ledger) and asked again.
"""

from __future__ import annotations

import time
from typing import Any, cast

from actors.limiter.local import Subject, Verdict, quota_of
from actors.limiter.resp import RespClient, Script

_ADMIT = """
-- tostring keeps 14 digits, an epoch reading to 0.1 ms: times and levels keep all 17.
local function exact(x) return string.format('%.17g', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = tonumber(ARGV[1])
local id = ARGV[2]
local lease_ttl = tonumber(ARGV[3])
local n = (#ARGV - 3) / 6
local plans = {}
for i = 1, n do
  local a = 3 + (i - 1) * 6
  local rpm = tonumber(ARGV[a + 1])
  local tpm = tonumber(ARGV[a + 2])
  local conc = tonumber(ARGV[a + 3])
  local budget = tonumber(ARGV[a + 4])
  local seed = tonumber(ARGV[a + 5])
  local k = (i - 1) * 4
  local plan = {tat = nil, level = nil}
  if budget > 0 then
    local spent = redis.call('GET', KEYS[k + 4])
    if not spent then
      if seed < 0 then
        return {0, 'seed', tostring(i), '0'}
      end
      spent = seed
    end
    spent = tonumber(spent)
    if spent + tokens > budget then
      return {0, 'budget', tostring(i), ARGV[a + 6]}
    end
    plan.spent = spent + tokens
    plan.budget_ttl = math.ceil(tonumber(ARGV[a + 6]) * 1000) + 86400000
  end
  if rpm > 0 then
    local interval = 60 / rpm
    local tat = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
    local new_tat = math.max(tat, now) + interval
    if new_tat - now > 60 + 1e-9 then
      return {0, 'requests', tostring(i), exact(new_tat - 60 - now)}
    end
    plan.tat = new_tat
  end
  if tpm > 0 then
    local state = redis.call('HMGET', KEYS[k + 2], 'level', 'stamp')
    local level = tpm
    if state[1] then
      level = math.min(tpm, tonumber(state[1]) + (now - tonumber(state[2])) * tpm / 60)
    end
    local need = math.min(tokens, tpm)
    if level < need then
      return {0, 'tokens', tostring(i), exact((need - level) * 60 / tpm)}
    end
    plan.level = level - need
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 3]) >= conc then
      return {0, 'concurrency', tostring(i), '1'}
    end
    plan.conc = true
  end
  plans[i] = plan
end
local out = {1}
for i = 1, n do
  local k = (i - 1) * 4
  local plan = plans[i]
  if plan.tat then
    local ttl = math.ceil((plan.tat - now) * 1000) + 1000
    redis.call('SET', KEYS[k + 1], exact(plan.tat), 'PX', ttl)
  end
  if plan.level then
    redis.call('HSET', KEYS[k + 2], 'level', exact(plan.level), 'stamp', exact(now))
    redis.call('PEXPIRE', KEYS[k + 2], 120000)
  end
  if plan.conc then
    redis.call('ZADD', KEYS[k + 3], now + lease_ttl, id)
    redis.call('PEXPIRE', KEYS[k + 3], math.ceil(lease_ttl * 1000))
  end
  if plan.spent then
    redis.call('SET', KEYS[k + 4], exact(plan.spent), 'PX', plan.budget_ttl)
  end
  table.insert(out, exact(plan.tat or 0))
  table.insert(out, exact(plan.level or -1))
end
table.insert(out, exact(now))
return out
"""

_SETTLE = """
-- tostring keeps 14 digits, an epoch reading to 0.1 ms: times and levels keep all 17.
local function exact(x) return string.format('%.17g', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local used = tonumber(ARGV[1])
local id = ARGV[2]
local n = (#ARGV - 2) / 4
for i = 1, n do
  local a = 2 + (i - 1) * 4
  local tpm, charged = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local budget, reserved = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local k = (i - 1) * 3
  redis.call('ZREM', KEYS[k + 2], id)
  if budget > 0 and redis.call('EXISTS', KEYS[k + 3]) == 1 then
    -- The period the request was admitted in (gone: a Redis restart re-seeds it)
    local spent = tonumber(redis.call('GET', KEYS[k + 3])) + used - reserved
    redis.call('SET', KEYS[k + 3], exact(math.max(0, spent)), 'KEEPTTL')
  end
  if tpm > 0 then
    local state = redis.call('HMGET', KEYS[k + 1], 'level', 'stamp')
    local level = tpm
    if state[1] then
      level = math.min(tpm, tonumber(state[1]) + (now - tonumber(state[2])) * tpm / 60)
    end
    level = math.min(tpm, level + charged - used)
    redis.call('HSET', KEYS[k + 1], 'level', exact(level), 'stamp', exact(now))
    redis.call('PEXPIRE', KEYS[k + 1], 120000)
  end
end
return 1
"""


class RedisLimits:
    def __init__(
        self, client: RespClient, *, prefix: str = "citadel:rl:", lease_ttl: float = 3600
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_ttl = lease_ttl
        self._admit = Script(_ADMIT)
        self._settle = Script(_SETTLE)

    def _keys(self, subject: Subject) -> tuple[str, str, str, str]:
        base = f"{self._prefix}{subject.name}"
        period = subject.period.id if subject.period is not None else "none"
        return f"{base}:tat", f"{base}:tokens", f"{base}:flight", f"{base}:budget:{period}"

    async def admit(
        self,
        subjects: tuple[Subject, ...],
        tokens: int,
        request_id: str,
        seeds: dict[str, float] | None = None,
        now: float | None = None,
    ) -> Verdict:
        """`seeds`: a budget's spend so far (the ledger's), for a period Redis does not
        have; `now`: this process's clock, for the time left in a budget's period."""
        keys: list[str] = []
        args: list[Any] = [tokens, request_id, self._lease_ttl]
        clock = time.time() if now is None else now
        for subject in subjects:
            keys.extend(self._keys(subject))
            spec = subject.spec
            budget, left = 0, 0.0
            if spec.budget is not None and subject.period is not None:
                budget, left = spec.budget.tokens, max(0.0, subject.period.end - clock)
            seed = (seeds or {}).get(subject.name, -1)
            args += [spec.rpm or 0, spec.tpm or 0, spec.max_concurrent or 0, budget, seed, left]
        reply = cast(list[Any], await self._client.run(self._admit, keys, args))
        if int(reply[0]) == 0:
            kind, index, wait = (_text(value) for value in reply[1:4])
            return Verdict(False, kind, subjects[int(index) - 1].name, float(wait))
        now = float(_text(reply[-1]))
        quota = None
        if subjects:
            tat, level = float(_text(reply[1])), float(_text(reply[2]))
            quota = quota_of(subjects[0].spec, tat, None if level < 0 else level, now)
        return Verdict(True, quota=quota)

    async def settle(
        self, subjects: tuple[Subject, ...], charged: int, used: int, request_id: str
    ) -> None:
        keys: list[str] = []
        args: list[Any] = [used, request_id]
        for subject in subjects:
            _, tokens_key, flight_key, budget_key = self._keys(subject)
            keys += [tokens_key, flight_key, budget_key]
            tpm = subject.spec.tpm or 0
            budget = 1 if subject.spec.budget is not None and subject.period is not None else 0
            args += [tpm, min(charged, tpm) if tpm else 0, budget, charged]
        await self._client.run(self._settle, keys, args)

    async def spent(self, subject: Subject) -> float | None:
        """A budget's spend in its current period, if Redis has it."""
        value = await self._client.call(b"GET", self._keys(subject)[3])
        return None if value is None else float(_text(value))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
