# compatlab golden image setup. Windows PowerShell 5.1; runs once, elevated, as the lab account's
# first-logon command (autounattend.xml), from C:\compatlab\setup where the specialize pass
# copied the setup medium. What to do comes from setup.json beside it, written by build.py:
# the install lines (built by compatlab.guest.windows_install), the exit codes each step
# accepts, the retry policy for 1618, the driver INFs to expect.
#
# Every step is checked afterwards, and the outcome goes to C:\compatlab\logs\setup.log and to
# COM1 as "compatlab-setup: ..." lines: build.py reads the build VM's serial log and fails the
# build on "check ... FAILED". Never run on real Windows in compatlab's own tests (there is no
# Windows there): see README.md, "What is verified".

$ErrorActionPreference = 'Continue'
$ProgressPreference = 'SilentlyContinue'
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$config = Get-Content -Raw -LiteralPath (Join-Path $here 'setup.json') | ConvertFrom-Json
$logDir = 'C:\compatlab\logs'
New-Item -ItemType Directory -Force -Path $logDir | Out-Null
$logFile = Join-Path $logDir 'setup.log'
$failed = New-Object 'System.Collections.Generic.List[string]'

function Say([string]$Text) {
    $line = "compatlab-setup: $Text"
    Add-Content -LiteralPath $logFile -Value ((Get-Date).ToUniversalTime().ToString('o') + ' ' + $line)
    try {
        $port = New-Object System.IO.Ports.SerialPort 'COM1', 115200, 'None', 8, 'One'
        $port.Open()
        $port.WriteLine($line)
        $port.Close()
    } catch { }
}

function Check([string]$Name, [bool]$Ok, [string]$Detail = '') {
    if ($Ok) { Say "check $Name ok $Detail" } else { Say "check $Name FAILED $Detail"; $failed.Add($Name) }
}

# One install line through cmd.exe, verbatim (Start-Process passes a string argument list as
# it is), with the step's own exit-code table and the 1618 retry policy.
function Invoke-Step($Step) {
    $attempts = [int]$config.retry.attempts
    for ($attempt = 1; $attempt -le $attempts; $attempt++) {
        $out = Join-Path $logDir ($Step.name + '.out.txt')
        $process = Start-Process -FilePath "$env:SystemRoot\System32\cmd.exe" `
            -ArgumentList ('/d /c ' + $Step.command) -Wait -PassThru -NoNewWindow `
            -RedirectStandardOutput $out -RedirectStandardError ($out + '.err')
        $code = [int]$process.ExitCode
        Say "step $($Step.name) exit $code (attempt $attempt of $attempts)"
        if (@($Step.success) -contains $code) { return 'success' }
        if (@($Step.reboot) -contains $code) { return 'reboot' }
        if (@($config.retry.codes) -notcontains $code -or $attempt -eq $attempts) { return 'failure' }
        Start-Sleep -Seconds ([double]@($config.retry.waits)[$attempt - 1])
    }
    return 'failure'
}

function Get-StoreInfs {
    @(Get-WindowsDriver -Online -ErrorAction SilentlyContinue |
        ForEach-Object { [IO.Path]::GetFileName($_.OriginalFileName).ToLowerInvariant() })
}

Say "start: image $($config.image)"

# -- virtio-win drivers (pnputil /add-driver ... /install), pvpanic among them -------------------
foreach ($step in $config.drivers) {
    $outcome = Invoke-Step $step
    Check "driver-$($step.name)" ($outcome -ne 'failure') $outcome
}
$store = Get-StoreInfs
foreach ($inf in $config.driver_infs) {
    Check "driver-store-$inf" ($store -contains $inf.ToLowerInvariant())
}
$panic = @(Get-PnpDevice -PresentOnly -ErrorAction SilentlyContinue |
    Where-Object { @($_.HardwareID) -contains 'ACPI\QEMU0001' })
if ($panic.Count -gt 0) {
    Check 'pvpanic-device' ($panic[0].Status -eq 'OK') "status $($panic[0].Status)"
} else {
    Say 'note: no pvpanic device in this VM; the driver is in the store for cells that have one'
}

# -- the QEMU guest agent (msiexec /i qemu-ga-x86_64.msi) ------------------------------------------
$outcome = Invoke-Step $config.agent
Check 'guest-agent-install' ($outcome -ne 'failure') $outcome
$agent = Get-Service -ErrorAction SilentlyContinue |
    Where-Object { $_.Name -eq 'QEMU-GA' -or $_.DisplayName -like 'QEMU Guest Agent*' } |
    Select-Object -First 1
if ($agent) {
    Set-Service -Name $agent.Name -StartupType Automatic
    if ($agent.Status -ne 'Running') { Start-Service -Name $agent.Name -ErrorAction SilentlyContinue }
    $agent.Refresh()
    Check 'guest-agent-service' ($agent.Status -eq 'Running') "$($agent.Name) $($agent.Status)"
} else {
    Check 'guest-agent-service' $false 'no QEMU-GA service'
}

# -- WinRM over HTTPS ------------------------------------------------------------------------------
# A lab NIC is an unidentified (Public) network, on which Enable-PSRemoting refuses to open the
# firewall; make it Private, and skip the check for NICs that appear later.
Get-NetConnectionProfile -ErrorAction SilentlyContinue |
    Where-Object { $_.NetworkCategory -eq 'Public' } |
    Set-NetConnectionProfile -NetworkCategory Private -ErrorAction SilentlyContinue
Enable-PSRemoting -Force -SkipNetworkProfileCheck | Out-Null
$pfx = Join-Path $here 'winrm.pfx'
if (Test-Path -LiteralPath $pfx) {
    # A certificate from the lab's CA, brought by build.py --winrm-pfx.
    $secret = (Get-Content -Raw -LiteralPath (Join-Path $here 'winrm.pfx.password')).Trim()
    $password = ConvertTo-SecureString -String $secret -AsPlainText -Force
    $cert = Import-PfxCertificate -FilePath $pfx -CertStoreLocation Cert:\LocalMachine\My -Password $password
    $source = 'lab CA'
} else {
    # Self-signed, for the names the lab connects by: localhost and 127.0.0.1 (a forwarded
    # port on the host), and the computer name. Server authentication only, ten years.
    $cert = New-SelfSignedCertificate -CertStoreLocation Cert:\LocalMachine\My `
        -Subject "CN=$env:COMPUTERNAME" -KeyAlgorithm RSA -KeyLength 2048 `
        -KeyExportPolicy NonExportable -NotAfter (Get-Date).AddYears(10) `
        -TextExtension @(
            "2.5.29.17={text}DNS=localhost&DNS=$env:COMPUTERNAME&IPAddress=127.0.0.1",
            '2.5.29.37={text}1.3.6.1.5.5.7.3.1')
    $source = 'self-signed'
}
Get-ChildItem WSMan:\localhost\Listener |
    Where-Object { $_.Keys -contains 'Transport=HTTPS' } | Remove-Item -Recurse -Force
New-Item -Path WSMan:\localhost\Listener -Transport HTTPS -Address * `
    -CertificateThumbPrint $cert.Thumbprint -Force | Out-Null
if (-not $config.winrm.keep_http) {
    Get-ChildItem WSMan:\localhost\Listener |
        Where-Object { $_.Keys -contains 'Transport=HTTP' } | Remove-Item -Recurse -Force
}
# Never unencrypted; Basic is allowed because it only ever travels inside TLS here, next to
# Negotiate (NTLM), which pywinrm uses by default.
Set-Item -Path WSMan:\localhost\Service\AllowUnencrypted -Value $false
Set-Item -Path WSMan:\localhost\Service\Auth\Basic -Value $true
# A local administrator other than the built-in one gets a filtered token over the network
# unless this is set (UAC remote restrictions); the lab installs drivers over WinRM.
New-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System' `
    -Name LocalAccountTokenFilterPolicy -Value 1 -PropertyType DWord -Force | Out-Null
if (-not (Get-NetFirewallRule -Name 'compatlab-winrm-https' -ErrorAction SilentlyContinue)) {
    New-NetFirewallRule -Name 'compatlab-winrm-https' -DisplayName 'WinRM over HTTPS (compatlab)' `
        -Direction Inbound -Protocol TCP -LocalPort 5986 -Action Allow -Profile Any | Out-Null
}
Set-Service -Name WinRM -StartupType Automatic
Restart-Service -Name WinRM
$https = @(Get-ChildItem WSMan:\localhost\Listener | Where-Object { $_.Keys -contains 'Transport=HTTPS' })
Check 'winrm-https-listener' ($https.Count -eq 1) "$source certificate $($cert.Thumbprint)"
$listening = @(Get-NetTCPConnection -LocalPort 5986 -State Listen -ErrorAction SilentlyContinue)
Check 'winrm-https-port' ($listening.Count -gt 0) 'tcp 5986'
# The certificate, so the lab can pin it (build.py writes it to winrm-https.pem).
$pem = [Convert]::ToBase64String($cert.RawData, 'InsertLineBreaks') -split "`r?`n"
Set-Content -LiteralPath 'C:\compatlab\winrm-https.cer' -Value $cert.RawData -Encoding Byte
Say 'winrm certificate follows'
Say '-----BEGIN CERTIFICATE-----'
foreach ($chunk in $pem) { if ($chunk) { Say $chunk } }
Say '-----END CERTIFICATE-----'

# -- what the specialize pass set: crash dumps, boot-failure recovery, storage, encryption -------
$crash = Get-ItemProperty -Path 'HKLM:\SYSTEM\CurrentControlSet\Control\CrashControl'
Check 'crash-small-dump' ($crash.CrashDumpEnabled -eq 3) "CrashDumpEnabled=$($crash.CrashDumpEnabled)"
Check 'crash-autoreboot' ($crash.AutoReboot -eq 1) "AutoReboot=$($crash.AutoReboot)"
Check 'crash-minidump-dir' ([bool]$crash.MinidumpDir) "MinidumpDir=$($crash.MinidumpDir)"
$boot = (& bcdedit.exe /enum '{default}') -join "`n"
Check 'boot-status-policy' ($boot -match '(?im)^bootstatuspolicy\s+IgnoreAllFailures\s*$')
Check 'recovery-disabled' ($boot -match '(?im)^recoveryenabled\s+No\s*$')
foreach ($service in $config.boot_start) {
    $start = (Get-ItemProperty -Path "HKLM:\SYSTEM\CurrentControlSet\Services\$service" -ErrorAction SilentlyContinue).Start
    Check "boot-start-$service" ($start -eq 0) "Start=$start"
}
$volume = Get-CimInstance -Namespace 'root\cimv2\Security\MicrosoftVolumeEncryption' `
    -ClassName Win32_EncryptableVolume -Filter "DriveLetter='C:'" -ErrorAction SilentlyContinue
if ($volume) {
    # 0: fully decrypted. An encrypted C: would ask every cell (a fresh TPM) for its recovery key.
    Check 'no-device-encryption' ($volume.ConversionStatus -eq 0) "ConversionStatus=$($volume.ConversionStatus)"
}
$guard = Get-CimInstance -Namespace 'root\Microsoft\Windows\DeviceGuard' -ClassName Win32_DeviceGuard -ErrorAction SilentlyContinue
if ($guard) { Say "note: VBS status $($guard.VirtualizationBasedSecurityStatus), running services $(@($guard.SecurityServicesRunning) -join ',')" }

# -- clean-up: no password left behind, the payload CD-ROM at D: -----------------------------------
$winlogon = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon'
Set-ItemProperty -Path $winlogon -Name AutoAdminLogon -Value '0'
foreach ($name in 'DefaultPassword', 'AutoLogonCount') {
    Remove-ItemProperty -Path $winlogon -Name $name -ErrorAction SilentlyContinue
}
foreach ($copy in "$env:SystemRoot\Panther\unattend.xml", "$env:SystemRoot\Panther\Unattend\unattend.xml",
        "$env:SystemRoot\Panther\autounattend.xml", "$env:SystemRoot\System32\Sysprep\unattend.xml") {
    Remove-Item -LiteralPath $copy -Force -ErrorAction SilentlyContinue
}
# Forget the letters of the CD-ROM drives the build used (Windows ISO, setup medium), so the
# only CD-ROM a cell has, the payload drive, takes the first free letter: D:.
$mounted = Get-Item -Path 'HKLM:\SYSTEM\MountedDevices'
foreach ($name in $mounted.GetValueNames()) {
    if ($name -notlike '\DosDevices\*') { continue }
    $data = $mounted.GetValue($name)
    if ($data -is [byte[]] -and [Text.Encoding]::Unicode.GetString($data) -match 'CdRom') {
        Remove-ItemProperty -Path 'HKLM:\SYSTEM\MountedDevices' -Name $name -Force
        Say "freed drive letter $($name.Substring(12)) (CD-ROM)"
    }
}

if ($failed.Count -eq 0) { Say 'done: all checks ok' } else { Say "done: FAILED $($failed -join ' ')" }
Remove-Item -LiteralPath (Join-Path $here 'winrm.pfx.password') -Force -ErrorAction SilentlyContinue
Remove-Item -LiteralPath (Join-Path $here 'winrm.pfx') -Force -ErrorAction SilentlyContinue
if ($config.shutdown) {
    Say 'shutting down'
    & shutdown.exe /s /t 5 /c 'compatlab image build finished' /d p:4:1
}
