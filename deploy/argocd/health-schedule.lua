-- Argo CD health check for predictions.dev/PredictionSchedule (resource.customizations.health.predictions.dev_PredictionSchedule).
-- Reads only what the controller writes: status.observedGeneration, status.nextScheduleTime and
-- the Ready / Stalled conditions (and spec.suspend).
--   Healthy      Ready=True (reason Scheduled): runs will be created on time
--   Degraded     Stalled=True (InvalidSchedule, InvalidTemplate, BatchNameTaken): runs cannot be created
--   Suspended    spec.suspend (Ready=True, reason Suspended): no new runs
--   Progressing  everything else: no status yet, a spec change not yet observed
local hs = {}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to pick up the schedule"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message(stalled, message(ready, "The schedule cannot create its runs"))
  return hs
end

if (obj.spec ~= nil and obj.spec.suspend == true) or (ready ~= nil and ready.reason == "Suspended") then
  hs.status = "Suspended"
  hs.message = message(ready, "spec.suspend holds new runs")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message(ready, "Scheduled")
  if status.nextScheduleTime ~= nil and status.nextScheduleTime ~= "" then
    hs.message = hs.message .. "; next run at " .. status.nextScheduleTime
  end
  return hs
end

hs.status = "Progressing"
hs.message = message(ready, "Waiting for the schedule to be ready")
return hs
