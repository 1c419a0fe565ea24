-- Runs an Argo CD health script the way Argo CD does, for tests/gitops.rs.
--   lua5.4 harness.lua HEALTH_LUA OBJECT_LUA
-- OBJECT_LUA is a chunk returning the resource as a table (what Argo CD converts the live object's
-- JSON into: objects are tables, arrays are sequences, null fields are absent). The health script
-- runs with that table as the global `obj` and only the libraries Argo CD opens for health
-- scripts by default (base, table and a safe subset of os; no io, no string library table, no
-- require of files). Prints the returned status, a newline and the message; exits non-zero when
-- the script fails or returns no valid status.
local health_path, object_path = arg[1], arg[2]
if health_path == nil or object_path == nil then
  io.stderr:write("usage: lua5.4 harness.lua HEALTH_LUA OBJECT_LUA\n")
  os.exit(2)
end

local object = assert(loadfile(object_path, "t", {}))()

local env = {
  obj = object,
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
  print = print, select = select, tonumber = tonumber, tostring = tostring, type = type,
  unpack = table.unpack, rawget = rawget, rawset = rawset, rawequal = rawequal,
  setmetatable = setmetatable, getmetatable = getmetatable,
  table = table,
  os = { time = os.time, date = os.date, clock = os.clock },
}
env._G = env

local chunk, err = loadfile(health_path, "t", env)
if chunk == nil then
  io.stderr:write("cannot load " .. health_path .. ": " .. tostring(err) .. "\n")
  os.exit(3)
end
local ok, hs = pcall(chunk)
if not ok then
  io.stderr:write("health script failed: " .. tostring(hs) .. "\n")
  os.exit(4)
end
local valid = { Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true }
if type(hs) ~= "table" or not valid[hs.status] then
  io.stderr:write("health script returned no valid status: " .. tostring(type(hs) == "table" and hs.status or hs) .. "\n")
  os.exit(5)
end
if hs.message ~= nil and type(hs.message) ~= "string" then
  io.stderr:write("health script returned a non-string message\n")
  os.exit(6)
end
io.write(hs.status, "\n", hs.message or "")
