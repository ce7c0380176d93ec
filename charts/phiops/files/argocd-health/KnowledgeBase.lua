-- Argo CD health check for phiops.dev/KnowledgeBase.
-- phiops writes status.observedGeneration and the conditions Ready, Reconciling and Stalled
-- (PhiDeployment also Degraded). Wire it into argocd-cm as
-- resource.customizations.health.phiops.dev_KnowledgeBase (docs/operations/gitops.md).
-- Written for Argo CD's Lua 5.1 (gopher-lua): no goto, no integer division, numbers are floats.
local hs = {}

local function find(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == wanted then
      return condition
    end
  end
  return nil
end

local function isTrue(condition)
  return condition ~= nil and condition.status == "True"
end

local function describe(condition, fallback)
  if condition == nil then
    return fallback
  end
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. condition.message
  end
  if text == "" then
    return fallback
  end
  return text
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the phiops operator to report a status"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the phiops operator to observe generation " .. string.format("%d", generation)
  return hs
end

local ready = find(status.conditions, "Ready")
local stalled = find(status.conditions, "Stalled")
if isTrue(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end
local degraded = find(status.conditions, "Degraded")
if isTrue(degraded) then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end
local reconciling = find(status.conditions, "Reconciling")
if isTrue(reconciling) then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end
if isTrue(ready) then
  if generation == nil or ready.observedGeneration == nil or ready.observedGeneration >= generation then
    hs.status = "Healthy"
    hs.message = describe(ready, "Ready")
    return hs
  end
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for Ready")
return hs
