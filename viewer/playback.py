"""The Time panel: the time slider, play/pause with speed and loop, and showing the scene at a time."""
from __future__ import annotations

import math
import time


class PlaybackPanel:
    """Mixin of `SceneViewer`: time slider and playback (needs the node updates of the other mixins)."""

    def _add_time_panel(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Time"):
            last = max(self.num_frames - 1, 1)
            self.time_slider = gui.add_slider("Time (frame)", min=0.0, max=float(last), step=self.config.time_step,
                                              initial_value=0.0, disabled=self.num_frames < 2)
            self.play_button = gui.add_button("Play", disabled=self.num_frames < 2)
            self.speed_slider = gui.add_slider("Speed (x)", min=0.1, max=self.config.max_speed, step=0.1,
                                               initial_value=1.0)
            self.loop_checkbox = gui.add_checkbox("Loop", initial_value=True)
            self.look_button = gui.add_button("Look through input camera")
        self.time_slider.on_update(lambda _: self.set_time(float(self.time_slider.value)))
        self.play_button.on_click(lambda _: self.set_playing(not self.playing))
        self.look_button.on_click(lambda event: self.look_through(self.time, event.client))

    def set_time(self, t: float) -> None:
        """Show the scene at time t (frame units, clamped to the clip); only the moving node is re-sent."""
        t = min(max(float(t), 0.0), float(self.num_frames - 1))
        if self.num_frames >= 2 and not math.isclose(self.time_slider.value, t, abs_tol=1e-9):
            self.time_slider.value = t  # the slider shows the time; its callback comes back here
            return
        with self._lock:
            self.time = t
            with self.server.atomic():
                for first_birth, death, handle in self.still_nodes:
                    handle.visible = self.layers.still and first_birth <= t < death
                self._update_moving()
                self._update_current_camera()
                self._update_tracks()
                self._update_mesh()

    def set_playing(self, playing: bool) -> None:
        """Start or pause playback (the time advances at `speed` x the clip's frame rate)."""
        self.playing = bool(playing) and self.num_frames >= 2
        self.play_button.label = "Pause" if self.playing else "Play"

    def _play_loop(self) -> None:
        previous = time.monotonic()
        while not self._stop.wait(1.0 / self.config.playback_updates_per_second):
            now = time.monotonic()
            elapsed, previous = now - previous, now
            if not self.playing:
                continue
            t = self.time + elapsed * float(self.speed_slider.value) * self.fps
            last = self.num_frames - 1
            if t > last:
                if self.loop_checkbox.value:
                    t = t % last
                else:
                    t = float(last)
                    self.set_playing(False)
            step = self.config.time_step
            self.time_slider.value = round(round(t / step) * step, 6)  # the slider's callback calls set_time
