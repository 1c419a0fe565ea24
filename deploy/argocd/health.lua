-- Argo CD health check for predictions.dev/PredictionBatch (resource.customizations.health.predictions.dev_PredictionBatch).
-- Reads only what the controller writes: status.observedGeneration, status.phase and the
-- Ready / Reconciling / Stalled / Degraded conditions.
--   Healthy      Ready=True (phase Succeeded)
--   Degraded     Stalled=True or phase Failed (the batch will not finish by itself)
--   Suspended    phase Suspended (spec.suspend)
--   Progressing  everything else: no status yet, a spec change not yet observed, a batch in flight
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
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to pick up the batch"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
local reconciling = condition(status, "Reconciling")

if (stalled ~= nil and stalled.status == "True") or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message(stalled, message(ready, "The batch failed"))
  return hs
end

if status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message(ready, "The batch is suspended")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message(ready, "The batch succeeded")
  return hs
end

hs.status = "Progressing"
hs.message = message(reconciling, message(ready, "Phase " .. status.phase))
return hs
