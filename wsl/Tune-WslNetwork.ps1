<#
.SYNOPSIS
    Disable Large Send Offload v2 on the WSL virtual adapter, the known fix for slow WSL2 networking.

.DESCRIPTION
    On Windows 10 (and some Windows 11 builds) traffic between WSL2 and the network can crawl
    (microsoft/WSL#4901, #5897: 4 Mbit/s instead of 80) until "Large Send Offload Version 2 (IPv4)"
    and "(IPv6)" are disabled on the "vEthernet (WSL)" adapter. Ollama's FAQ gives the same fix.
    This script reports both values, saves them to a JSON file, and disables them; -Restore puts the
    saved values back. Windows updates and WSL restarts can re-create the adapter and reset the values:
    run it again then. With WSL's "mirrored" networking mode there is no vEthernet (WSL) adapter.

    Run in an elevated (Run as administrator) PowerShell:
        powershell -ExecutionPolicy Bypass -File .\Tune-WslNetwork.ps1 -DryRun
        powershell -ExecutionPolicy Bypass -File .\Tune-WslNetwork.ps1
        powershell -ExecutionPolicy Bypass -File .\Tune-WslNetwork.ps1 -Restore

.PARAMETER AdapterName
    The adapter to change. Default: "vEthernet (WSL)" (newer builds: "vEthernet (WSL (Hyper-V firewall))").

.PARAMETER DryRun
    Show what would change; change nothing and save nothing. Needs no administrator rights.

.PARAMETER Restore
    Put back the values saved by the last run (from -StatePath).

.PARAMETER StatePath
    Where the previous values are saved. Default: %LOCALAPPDATA%\llm-appliance\wsl-lso-backup.json.
#>
[CmdletBinding()]
param(
    [string] $AdapterName = 'vEthernet (WSL)',
    [switch] $DryRun,
    [switch] $Restore,
    [string] $StatePath = (Join-Path $env:LOCALAPPDATA 'llm-appliance\wsl-lso-backup.json')
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$PropertyNames = @(
    'Large Send Offload Version 2 (IPv4)',
    'Large Send Offload Version 2 (IPv6)'
)

function Test-Administrator {
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Get-LsoValues {
    param([string] $Name)
    $result = [ordered]@{}
    foreach ($property in $PropertyNames) {
        $setting = Get-NetAdapterAdvancedProperty -Name $Name -DisplayName $property -ErrorAction SilentlyContinue
        if ($null -eq $setting) {
            $result[$property] = $null
        } else {
            $result[$property] = $setting.DisplayValue
        }
    }
    return $result
}

function Write-Report {
    param([string] $Title, $Values)
    Write-Output $Title
    foreach ($key in $Values.Keys) {
        $value = $Values[$key]
        if ($null -eq $value) { $value = '(not present on this adapter)' }
        Write-Output ('  {0}: {1}' -f $key, $value)
    }
}

$adapter = Get-NetAdapter -Name $AdapterName -IncludeHidden -ErrorAction SilentlyContinue
if ($null -eq $adapter) {
    $candidates = Get-NetAdapter -IncludeHidden | Where-Object { $_.Name -like 'vEthernet (WSL*' }
    if ($candidates) {
        $AdapterName = @($candidates)[0].Name
        Write-Output ('Using adapter "{0}".' -f $AdapterName)
    } else {
        Write-Error ('No adapter named "{0}". Start WSL once (wsl.exe) so it exists; with mirrored networking there is none to tune.' -f $AdapterName)
        exit 2
    }
}

$before = Get-LsoValues -Name $AdapterName
Write-Report -Title ('Before, on "{0}":' -f $AdapterName) -Values $before

if ($Restore) {
    if (-not (Test-Path -LiteralPath $StatePath)) {
        Write-Error ('No saved values at {0}: nothing to restore.' -f $StatePath)
        exit 2
    }
    $saved = Get-Content -LiteralPath $StatePath -Raw | ConvertFrom-Json
    $target = [ordered]@{}
    foreach ($property in $PropertyNames) { $target[$property] = $saved.values.$property }
} else {
    $target = [ordered]@{}
    foreach ($property in $PropertyNames) { $target[$property] = 'Disabled' }
}

if ($DryRun) {
    Write-Report -Title 'Dry run: would set' -Values $target
    Write-Output 'Nothing changed (-DryRun).'
    exit 0
}

if (-not (Test-Administrator)) {
    Write-Error 'Changing adapter properties needs an administrator PowerShell (Run as administrator). Use -DryRun to only look.'
    exit 1
}

if (-not $Restore) {
    $directory = Split-Path -Parent $StatePath
    if (-not (Test-Path -LiteralPath $directory)) { New-Item -ItemType Directory -Path $directory | Out-Null }
    [ordered]@{ adapter = $AdapterName; saved = (Get-Date).ToString('o'); values = $before } |
        ConvertTo-Json | Set-Content -LiteralPath $StatePath -Encoding UTF8
    Write-Output ('Saved the previous values to {0} (undo with -Restore).' -f $StatePath)
}

foreach ($property in $PropertyNames) {
    $value = $target[$property]
    if ($null -eq $before[$property] -or $null -eq $value) { continue }
    if ($before[$property] -ne $value) {
        Set-NetAdapterAdvancedProperty -Name $AdapterName -DisplayName $property -DisplayValue $value
    }
}

$after = Get-LsoValues -Name $AdapterName
Write-Report -Title 'After:' -Values $after
