# Packer template for a compatlab Windows golden image: the same answer file and setup.ps1 as
# `build.py run`, for labs whose image pipeline is Packer. Not run in compatlab's own tests (no
# Packer, no Windows ISO there); `packer validate` is the first thing to run (README).
#
#   .venv/bin/python images/recipes/windows/build.py media images/win11-24h2.yaml \
#       --virtio-win virtio-win.iso --out /var/tmp/cl-win11-24h2 --for packer
#   PKR_VAR_winrm_password="$COMPATLAB_WINRM_PASSWORD" packer build \
#       -var iso_url=file:///isos/win11-24h2-eval.iso -var iso_checksum=sha256:... \
#       -var setup_dir=/var/tmp/cl-win11-24h2/setup -var vm_name=win11-24h2 \
#       images/recipes/windows/windows.pkr.hcl
#
# `--for packer` leaves the shutdown to Packer: it waits for WinRM over HTTPS (which proves the
# listener works), then runs shutdown_command. The staged folder goes on a second CD through
# cd_files (Packer builds that ISO with xorriso or mkisofs, which must be installed).

packer {
  required_plugins {
    qemu = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

variable "iso_url" {
  type        = string
  description = "The Windows ISO (Microsoft Evaluation Center), file:// or a path"
}

variable "iso_checksum" {
  type        = string
  description = "sha256:... of the Windows ISO, as published next to the download"
}

variable "setup_dir" {
  type        = string
  description = "The folder `build.py media --for packer` staged (holds autounattend.xml)"
}

variable "vm_name" {
  type        = string
  description = "The catalog image name, e.g. win11-24h2; the disk is <output_directory>/<vm_name>"
}

variable "output_directory" {
  type    = string
  default = "output-compatlab"
}

variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "kvm where the host has hardware virtualization, tcg elsewhere (hours, not minutes)"
}

variable "firmware" {
  type        = string
  default     = "uefi"
  description = "uefi (GPT, Secure Boot, TPM) or bios (MBR): the catalog entry's firmware"
}

variable "efi_firmware_code" {
  type    = string
  default = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
}

variable "efi_firmware_vars" {
  type    = string
  default = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
}

variable "winrm_username" {
  type    = string
  default = "compatlab"
}

variable "winrm_password" {
  type        = string
  sensitive   = true
  description = "Set PKR_VAR_winrm_password from the image's credentials reference; never -var"
}

variable "memory" {
  type    = number
  default = 4096
}

variable "cpus" {
  type    = number
  default = 2
}

variable "disk_size" {
  type    = string
  default = "64G"
}

source "qemu" "windows" {
  vm_name          = "${var.vm_name}.qcow2"
  output_directory = var.output_directory
  headless         = true
  accelerator      = var.accelerator
  machine_type     = "q35"
  cpus             = var.cpus
  memory           = var.memory

  efi_boot          = var.firmware == "uefi"
  efi_firmware_code = var.efi_firmware_code
  efi_firmware_vars = var.efi_firmware_vars
  vtpm              = var.firmware == "uefi"

  iso_url      = var.iso_url
  iso_checksum = var.iso_checksum

  disk_interface = "virtio"
  disk_size      = var.disk_size
  disk_discard   = "unmap"
  format         = "qcow2"

  # The staged folder's contents at the CD's root: autounattend.xml, $WinPEDriver$, compatlab\.
  cd_files = ["${var.setup_dir}/"]
  cd_label = "COMPATLAB_SETUP"

  # "Press any key to boot from CD or DVD".
  boot_wait    = "3s"
  boot_command = ["<enter><wait><enter><wait><enter><wait><enter>"]

  qemuargs = [
    # The guest's WinRM port forwarded to 127.0.0.1 only, on an e1000 NIC (an inbox driver):
    # nothing outside this host can reach the half-built machine.
    ["-netdev", "user,id=compatlab0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:5986"],
    ["-device", "e1000,netdev=compatlab0"],
    # pvpanic, so its driver binds to a device during the build; the guest agent's channel.
    ["-device", "pvpanic"],
    ["-device", "virtio-serial-pci"],
    ["-chardev", "socket,id=qga0,path=/tmp/compatlab-packer-${var.vm_name}-qga.sock,server=on,wait=off"],
    ["-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"],
  ]

  communicator   = "winrm"
  winrm_username = var.winrm_username
  winrm_password = var.winrm_password
  winrm_use_ssl  = true
  # The certificate is the guest's own, self-signed (or from --winrm-pfx): not in Packer's trust.
  winrm_insecure = true
  winrm_use_ntlm = true
  winrm_timeout  = "6h"

  # setup.ps1 (shutdown: false in setup.json) has finished and passed its checks by then:
  # the provisioner below waits for it.
  shutdown_command = "shutdown.exe /s /t 10 /d p:4:1"
  shutdown_timeout = "30m"
}

build {
  sources = ["source.qemu.windows"]

  # WinRM answers as soon as setup.ps1 has set it up, before its checks and clean-up: wait
  # for its last line, show its log, and fail the build on a failed check.
  provisioner "powershell" {
    inline = [
      "$log = 'C:\\compatlab\\logs\\setup.log'; $deadline = (Get-Date).AddHours(1)",
      "while (-not (Select-String -Path $log -Pattern 'compatlab-setup: done' -Quiet -ErrorAction SilentlyContinue)) { if ((Get-Date) -gt $deadline) { throw 'setup.ps1 did not finish' }; Start-Sleep -Seconds 10 }",
      "Get-Content -Path $log",
      "if (Select-String -Path $log -Pattern 'check .* FAILED' -Quiet) { throw 'a compatlab setup check failed (see the log above)' }",
    ]
  }
}
