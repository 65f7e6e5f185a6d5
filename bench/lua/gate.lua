-- The Lua peer of flowgate in the benchmark: the same checks and the same replies for the
-- scenarios measured, written as one would in Envoy's built-in Lua filter.
--
-- flowgate-bench prepends the flow table to this file (bench/work/lua-<flows>.lua):
--   FLOWS["f-1001"] = {ref = "web1", paused = false, async = false, template = true,
--                      max = 2097152, tokens = {["<plain token>"] = true}}
--
-- Where it does less work than flowgate (every difference is in Lua's favour):
-- - tokens are stored and compared as PLAIN TEXT (a table lookup): Envoy's Lua has no SHA-256,
--   and a pure-Lua digest would make this peer much slower than anyone would deploy;
-- - the path is matched as sent (no percent-decoding or dot-segment normalisation);
-- - the request body is buffered and its size checked, but not parsed as JSON;
-- - the seed's response template is hand-written as a pattern match, not rendered.

local PREFIX = "/v1/flow-webhook/"
local JSON = "application/json"
local PAUSED = '{"status":200,"error":"biz_logic","message":"Flow status is `paused`. '
  .. 'Unpause to run this flow using a webhook","data":null}'

local function envelope(status, code, message)
  return string.format('{"status":%d,"error":"%s","message":"%s","data":null}', status, code, message)
end

local function refuse(handle, status, code, message, extra)
  local headers = {[":status"] = tostring(status), ["content-type"] = JSON}
  for name, value in pairs(extra or {}) do
    headers[name] = value
  end
  handle:respond(headers, envelope(status, code, message))
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local own = {}
  for name, _ in pairs(headers) do
    if name:sub(1, 11) == "x-flowgate-" then
      own[#own + 1] = name
    end
  end
  for _, name in ipairs(own) do
    headers:remove(name)
  end

  local path = headers:get(":path")
  if path:sub(1, #PREFIX) ~= PREFIX then
    return
  end
  local id = path:match("^[^/?]*", #PREFIX + 1)
  local flow = FLOWS[id]
  if flow == nil then
    return refuse(handle, 404, "not_found", "no flow at this webhook path")
  end
  if headers:get(":method") ~= "POST" then
    return refuse(handle, 405, "method_not_allowed", "method not allowed for this flow; allowed: POST",
      {allow = "POST"})
  end
  local authorization = headers:get("authorization")
  local token = authorization and authorization:match("^[Bb][Ee][Aa][Rr][Ee][Rr] ([%w%-%._~%+/]+=*)$")
  if token == nil or not flow.tokens[token] then
    if authorization == nil then
      return refuse(handle, 401, "unauthorized", "missing bearer token: send Authorization: Bearer <token>",
        {["www-authenticate"] = 'Bearer realm="flowgate"'})
    end
    return refuse(handle, 401, "unauthorized", "invalid bearer token",
      {["www-authenticate"] = 'Bearer realm="flowgate", error="invalid_token"'})
  end
  if flow.paused then
    return handle:respond({[":status"] = "200", ["content-type"] = JSON}, PAUSED)
  end

  local body = handle:body()
  if body ~= nil and body:length() > flow.max then
    return refuse(handle, 413, "payload_too_large",
      string.format("request body exceeds the flow's limit of %d bytes", flow.max))
  end
  -- A header map wrapper taken before body() is dead after it: take it again.
  headers = handle:headers()
  headers:remove("authorization")
  headers:add("x-flowgate-flow-id", id)
  headers:add("x-flowgate-ref-id", flow.ref)
  headers:add("x-flowgate-mode", flow.async and "async" or "sync")
  headers:add("x-flowgate-flow-status", "live")
  if flow.async then
    handle:streamInfo():dynamicMetadata():set("flowgate", "answer", "scheduled")
  elseif flow.template then
    handle:streamInfo():dynamicMetadata():set("flowgate", "answer", "template")
  end
end

function envoy_on_response(handle)
  local state = handle:streamInfo():dynamicMetadata():get("flowgate")
  if state == nil then
    return
  end
  local headers = handle:headers()
  local status = headers:get(":status")
  if status:sub(1, 1) ~= "2" then
    local reply = string.format(
      '{"status":502,"error":"executor_error","message":"flow executor answered with an error",'
        .. '"data":{"upstream_status":%s}}', status)
    handle:body():setBytes(reply)
    headers:replace(":status", "502")
    headers:replace("content-type", JSON)
    return
  end
  local body = handle:body()
  local output = body:getBytes(0, body:length())
  headers = handle:headers()
  local answer
  if state.answer == "scheduled" then
    local data = output:match("^%s*{") and output or "null"
    answer = '{"status":200,"error":null,"message":"Flow run scheduled","data":' .. data .. '}'
  else
    -- The seed's template: {"valid": {% if res1.value == "myResult" %}"{{ res1.value }}"{% else %}false{% endif %}}
    local value = output:match('"res1"%s*:%s*{%s*"value"%s*:%s*"([^"]*)"')
    if value == "myResult" then
      answer = '{"valid": "' .. value .. '"}'
    else
      answer = '{"valid": false}'
    end
  end
  body:setBytes(answer)
  headers:replace(":status", "200")
  headers:replace("content-type", JSON)
end
