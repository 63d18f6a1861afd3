#!/bin/sh
# /tests/vfio-nested in the guest: binds QEMU's edu device (1234:11e8) to
# vfio-pci, lowers vfio_iommu_type1's dma_entry_limit to 16 and runs
# /bin/vfio-nested on it.
dev=""
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then
        dev=${d##*/}
    fi
done
if [ -z "$dev" ]; then
    echo "not ok - setup: no edu device (1234:11e8) on the guest's PCI bus"
    exit 0
fi
if [ ! -e "/sys/bus/pci/devices/$dev/iommu_group" ]; then
    echo "not ok - setup: $dev has no IOMMU group (no intel_iommu=on?)"
    exit 0
fi
echo vfio-pci > "/sys/bus/pci/devices/$dev/driver_override"
echo "$dev" > /sys/bus/pci/drivers_probe
group=$(basename "$(readlink "/sys/bus/pci/devices/$dev/iommu_group")")
if [ ! -e "/dev/vfio/$group" ]; then
    echo "not ok - setup: vfio-pci did not bind $dev (no /dev/vfio/$group)"
    exit 0
fi
# A small mapping budget, so the program can run into it (containers
# take the budget when they are opened).
limit=/sys/module/vfio_iommu_type1/parameters/dma_entry_limit
if ! echo 16 > "$limit"; then
    echo "not ok - setup: cannot lower $limit"
    exit 0
fi
echo "vfio-nested: $dev in IOMMU group $group, dma_entry_limit $(cat "$limit")"
/bin/vfio-nested "$dev"
