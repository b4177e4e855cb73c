-- wrk script: every request carries the next token of the file named by BENCH_TOKENS (one a
-- line) as `Authorization: Bearer`, so a list longer than the sidecar's token cache makes every
-- request a cold verification.
local requests = {}
local next_index = 1

function init(args)
  local path = os.getenv("BENCH_TOKENS")
  if path == nil then
    error("BENCH_TOKENS is not set")
  end
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format(nil, nil, {
        ["Host"] = wrk.host .. ":" .. wrk.port,
        ["Authorization"] = "Bearer " .. line,
      })
    end
  end
  if #requests == 0 then
    error("no tokens in " .. path)
  end
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end
