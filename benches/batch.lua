-- wrk script: POST /api/v1/messages/batch with BATCH (default 500) one-recipient messages.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("KEY")
if key then wrk.headers["Authorization"] = "Bearer " .. key end
local n = tonumber(os.getenv("BATCH") or "500")
local items = {}
for i = 1, n do
  items[i] = '{"from":"App <noreply@acme.test>","to":["user' .. i .. '@example.test"],"subject":"Hello","text":"Hi there","html":"<p>Hi there</p>"}'
end
wrk.body = '{"messages":[' .. table.concat(items, ",") .. ']}'
