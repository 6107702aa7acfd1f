# Runs first at every reset, before main.py. Keep it small: an error here stops the button.
import esp

# The Wi-Fi driver's own log lines on the USB console would mix with the firmware's IND/EVT lines,
# which technicians and the provisioning tool read.
esp.osdebug(None)
